"""What the demo and the study do once their flags are parsed (cli/demo.py, cli/study.py parse and call): the demo's
stages, the Ray pipeline as a subprocess, the study's plan, runs, process pool, session and report."""
