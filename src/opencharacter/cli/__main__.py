from opencharacter.cli import main

main()
