"""The knowledge base: the ``kb`` stage that imports it from its source (:mod:`.importer`), the
table every later stage opens (:mod:`.store`) and the Wikidata dump reader (:mod:`.wikidata`)."""
