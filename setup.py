# Beam's --setup_file ships the package to remote workers with this file; metadata lives in setup.cfg.
__import__("setuptools").setup()
