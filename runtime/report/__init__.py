"""The MM-TOXIC-QA HTML report: `python -m runtime.report --report R/report.json [--compare B/report.json ...]
[--experts DIR] --out report.html`.

Modules: `mask` (toxic-word masking), `experts` (the expert map on the page), `examples` (the example
responses), `figures` (matplotlib figures as embedded PNG), `page` (the page), `screenshot` (a headless-chromium
render); run directories are read by runtime.mmtoxicqa.reports and compared by runtime.mmtoxicqa.compat.
Importing this package imports no plotting library; `figures` needs matplotlib (`pip install matplotlib`).
"""
