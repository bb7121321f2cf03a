from splitmq.cli import main

main()
