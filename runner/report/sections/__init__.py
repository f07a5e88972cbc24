"""The sections of the run report, one module each (and `pieces`, the HTML they are made of);
`runner.report.page` puts them in order on the page.
"""
