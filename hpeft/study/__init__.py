"""Studies: a research question as arms x factors x seeds, run through hpeft search's machinery and decided
by confidence intervals (`hpeft study`, studies/*.yaml). spec.py reads a study file, plan.py turns it into
run configs and one grid search, runner.py runs them, analysis.py and stats.py make the numbers,
hypotheses.py the verdicts, outputs.py study.json, results.md, report.html and main.png."""
