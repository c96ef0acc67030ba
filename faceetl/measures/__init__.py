"""Measures of one face, pure functions of its row and its aligned crop: quality
(:mod:`.quality`: ``face_size``, ``box_side``, ``blur``, ``brightness``, ``contrast``) and head
pose (:mod:`.pose`: ``yaw``, ``pitch``, ``roll``). The ``quality`` predictor adds them as
columns; :data:`faceetl.curate.PRESETS` filters on them."""
