"""A Wikidata JSON dump in the real dump's shape (one entity per line inside a JSON array,
each line but the last ending in a comma), small enough to write in a test."""

import bz2
import json


def claim(pid, qid):
    return {"mainsnak": {"snaktype": "value", "property": pid, "datatype": "wikibase-item",
                         "datavalue": {"type": "wikibase-entityid",
                                       "value": {"entity-type": "item", "numeric-id": int(qid[1:]),
                                                 "id": qid}}},
            "type": "statement", "rank": "normal"}


def entity(qid, label, p31, sitelinks=3, aliases=(), desc="", kind="item"):
    e = {"type": kind, "id": qid, "labels": {}, "descriptions": {}, "aliases": {},
         "claims": {"P31": [claim("P31", q) for q in p31]},
         "sitelinks": {f"wiki{i}": {"site": f"wiki{i}", "title": label, "badges": []}
                       for i in range(sitelinks)}}
    if label:
        e["labels"]["en"] = {"language": "en", "value": label}
        e["labels"]["de"] = {"language": "de", "value": label + " (de)"}
    if desc:
        e["descriptions"]["en"] = {"language": "en", "value": desc}
    if aliases:
        e["aliases"]["en"] = [{"language": "en", "value": a} for a in aliases]
    return e


def write_dump(path, entities):
    lines = ["["] + [json.dumps(e) + "," for e in entities[:-1]] + [json.dumps(entities[-1]), "]"]
    with bz2.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
