"""Curating faces: quality and head-pose measures (:mod:`.quality`, :mod:`.pose`), and filters."""
