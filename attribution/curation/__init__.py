"""What data teams do with a built root: concept and exemplar scans (``scan``), prune
lists (``prune_list``), and pruned corpora (``prune_corpus``) and roots with an audit
trail (``prune``); scan and prune apply run on the stage runtime (``stages.base``).
"""
