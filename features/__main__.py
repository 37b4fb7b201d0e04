from features.cli import main
from hearth.cli import run_main

run_main(main)
