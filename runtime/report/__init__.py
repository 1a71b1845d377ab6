"""The MM-TOXIC-QA HTML report: `python -m runtime.report --report R/report.json [--compare B/report.json ...]
[--experts DIR] --out report.html`.

Modules: `load` (reading and validating run directories), `compat` (can two runs be compared), `mask`
(toxic-word masking), `experts` (the experts artifact, read without torch), `plots` (matplotlib figures as
embedded PNG), `html` (the page), `screenshot` (a headless-chromium render). Importing this package imports
no plotting library; `plots` needs matplotlib (`pip install matplotlib`).
"""
