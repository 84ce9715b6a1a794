from leveret.cli import main

main()
