-- Message search grams move off the send path.
--
-- The expression index messages_text_grams computed beseda_grams (PL/pgSQL, one loop
-- turn per character: 35-60 us a message) inside every insert, and every few seconds
-- one insert also merged the GIN pending list (a 45-60 ms writer batch). Now a message's
-- grams live in message_grams, one row per message, written by the nodes' search
-- indexers (wsserver/search_index.py), which compute them in Python in batches after
-- the commit. Search finds messages through message_grams and rechecks the text on
-- messages itself, so a lagging row can only hide a match for a moment, never show a
-- wrong one.
--
-- What tells the indexers to look: message_grams_queue, a heap without indexes that
-- only ever takes appends and batch deletes. New messages are queued by the statement
-- that inserts them (the writer, the importer); content changes and deletes by the
-- trigger below, so no UPDATE path can forget. rev orders the writes of two indexers
-- that raced over one message: the newer content wins.

CREATE TABLE message_grams (
    message_id  bigint PRIMARY KEY,
    rev         bigint NOT NULL,
    -- Space-separated distinct grams (a gram never holds whitespace); '' for a message
    -- deleted or without searchable text.
    grams       text   NOT NULL
);
CREATE INDEX message_grams_idx ON message_grams USING gin (string_to_array(grams, ' '));

CREATE TABLE message_grams_queue (
    message_id  bigint      NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000);

CREATE FUNCTION beseda_queue_changed_grams() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO message_grams_queue (message_id)
    SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE n.content IS DISTINCT FROM o.content OR n.deleted_at IS DISTINCT FROM o.deleted_at;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_grams_changed
    AFTER UPDATE ON messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION beseda_queue_changed_grams();

-- What is already stored is indexed by the first indexer to run, oldest first.
INSERT INTO message_grams_queue (message_id)
SELECT id FROM messages WHERE deleted_at IS NULL ORDER BY id;

DROP INDEX messages_text_grams;
