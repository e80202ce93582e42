from weakshot_cli.cli import main

main()
