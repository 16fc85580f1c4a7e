"""One-shot importer of a Twilio Conversations export into Beseda's tables.

`importer.cli.run(argv)` is the entry point (`beseda import-twilio DIR ...`). The
reading side (`export`) turns pages into per-conversation plans without touching
the database; the writing side (`load`) bulk-loads them with COPY in bounded
transactions and records progress in `import_runs` / `import_conversations`.
"""
