from position_pipeline.cli.main import main

main()
