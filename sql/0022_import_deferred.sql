-- `beseda import-twilio --bulk` loads a first import into a database that no node
-- serves: it drops the secondary indexes and foreign keys of `messages` for the
-- load and builds them again at the end, as pg_restore does. Each one dropped is
-- recorded here, with the statement that builds it, in the transaction that drops
-- it; it leaves this table in the transaction that builds it again. A row here means
-- the schema of `messages` is incomplete: nodes refuse to start, and the next run
-- of the importer (bulk or not) builds what is missing before anything else.
CREATE TABLE import_deferred (
    name         text        PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind IN ('unique', 'index', 'foreign_key')),
    definition   text        NOT NULL,
    deferred_at  timestamptz NOT NULL DEFAULT now()
);
