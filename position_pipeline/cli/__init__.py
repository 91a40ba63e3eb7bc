"""The `position-pipeline` command line: argument parsing and output only, over `position_pipeline.core` (and
`position_pipeline.defs` for `backfill`). `main.main` is the entry point; `parser.build_parser` imports nothing
heavy."""
