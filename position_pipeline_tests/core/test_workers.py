"""`core.workers`: a worker is "gone" only when that is certain from here."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from position_pipeline.core.workers import Worker, this_worker, worker_gone
from position_pipeline_tests.support.waiting import wait_until


def test_a_worker_reads_back_what_it_wrote_and_nothing_else() -> None:
    me = this_worker()
    assert Worker.parse(str(me)) == me
    for text in ("", "host|ns|notapid|1", "a|b|c", "a|b|1|2|3"):
        assert Worker.parse(text) is None


def test_this_process_is_not_gone_and_a_worker_elsewhere_is_never_known_gone() -> None:
    me = this_worker()
    assert not worker_gone(me)
    assert not worker_gone(dataclasses.replace(me, host="another-host", pid=2**22 + 7))
    assert not worker_gone(dataclasses.replace(me, namespace="pid:[1]", pid=2**22 + 7))  # another container
    assert worker_gone(dataclasses.replace(me, started="1")) == bool(me.started)  # same pid, other start: reused


@pytest.mark.system  # starts processes
def test_an_exited_worker_is_gone_and_so_is_a_zombie() -> None:
    code = "from position_pipeline.core.workers import this_worker; print(this_worker(), flush=True)"
    exited = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    worker = Worker.parse(exited.stdout.strip())
    assert worker is not None and worker_gone(worker)
    zombie = subprocess.Popen([sys.executable, "-c", code + "; import sys; sys.exit(0)"], stdout=subprocess.PIPE)
    assert zombie.stdout is not None
    worker = Worker.parse(zombie.stdout.readline().decode().strip())
    assert worker is not None
    wait_until(lambda: worker_gone(worker), 10, "the child gone (exited, not reaped yet: a zombie until wait())")
    assert zombie.poll() == 0
