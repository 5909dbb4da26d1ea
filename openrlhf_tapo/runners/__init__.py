"""What the demo, the study and the regime check do once their flags are parsed (cli/demo.py, cli/study.py,
cli/regime_check.py parse and call): the demo's stages, the Ray pipeline as a subprocess, the study's plan, runs,
process pool, session and report, the regime check's run."""
