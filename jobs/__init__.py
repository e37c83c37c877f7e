"""The ``tda`` command line, runner options and job configs: parsing only."""
