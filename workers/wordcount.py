#!/usr/bin/env python3
"""Example script worker `wordcount` (needs python3): counts the words of {"text": "..."}.

    bgnode do wordcount '{"text":"to be or not to be"}' --wait
"""
import json
import sys

args = json.load(sys.stdin) or {}
words = str(args.get("text", "")).split()
counts = {}
for word in words:
    counts[word] = counts.get(word, 0) + 1
json.dump({"words": len(words), "counts": counts}, sys.stdout)
