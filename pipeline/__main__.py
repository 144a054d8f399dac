from pipeline.entry import run  # installs the signal handlers, then imports the command line

run()
