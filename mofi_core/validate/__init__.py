"""The gate between curation and training: the ``validate`` stage's great-expectations suites
(:mod:`.suites`), the check every consumer of the I2E dataset runs (:mod:`.gate`), and Data
Docs that read offline (:mod:`.data_docs`)."""
