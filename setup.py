# Beam's --setup_file ships the package to remote workers; metadata is in setup.cfg.
__import__("setuptools").setup()
