"""What data teams do with a built root: concept and exemplar scans, prune lists,
and pruned corpora / roots with an audit trail.
"""
