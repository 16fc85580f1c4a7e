-- Translation off the hot path: a durable queue of messages to translate, filled by
-- triggers in the same transaction as the message (nothing is lost between commit
-- and enqueue), drained by workers with FOR UPDATE SKIP LOCKED and a lease.

-- One row: whether any node has a provider configured. Without one, nothing is
-- queued (a node with a provider turns it on at start).
CREATE TABLE translation_settings (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    enabled  boolean NOT NULL DEFAULT false
);
INSERT INTO translation_settings (id, enabled) VALUES (true, false);

CREATE TABLE translation_jobs (
    message_id    bigint      PRIMARY KEY REFERENCES messages (id),
    chat_id       bigint      NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    run_after     timestamptz NOT NULL DEFAULT now(),
    locked_until  timestamptz,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX translation_jobs_due_idx ON translation_jobs (run_after);

-- Translations asked for over POST /api/v1/chat-message, by message_key, so a
-- repeated call (or the message sent afterwards) does not ask the provider again.
CREATE TABLE translation_cache (
    chat_id      bigint      NOT NULL,
    message_key  text        NOT NULL,
    source_hash  text        NOT NULL,
    lang         text        NOT NULL,
    texts        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, message_key)
);

CREATE FUNCTION beseda_enqueue_new_messages() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT enabled FROM translation_settings) THEN
        INSERT INTO translation_jobs (message_id, chat_id)
        SELECT n.id, n.chat_id FROM new_rows n
         WHERE n.deleted_at IS NULL AND n.external_id IS NULL AND n.lang IS NOT NULL
           AND n.content <> '{}'::jsonb
        ON CONFLICT (message_id) DO NOTHING;
        IF FOUND THEN
            PERFORM pg_notify('beseda_translation', '');
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- An edit replaces the content with the new original: translate it again.
CREATE FUNCTION beseda_enqueue_edited_messages() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT enabled FROM translation_settings) THEN
        INSERT INTO translation_jobs (message_id, chat_id)
        SELECT n.id, n.chat_id FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.edited_at IS DISTINCT FROM o.edited_at AND n.deleted_at IS NULL
           AND n.lang IS NOT NULL AND n.content <> '{}'::jsonb
        ON CONFLICT (message_id) DO UPDATE
            SET attempts = 0, run_after = now(), locked_until = NULL, last_error = NULL;
        IF FOUND THEN
            PERFORM pg_notify('beseda_translation', '');
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_translation_insert
    AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION beseda_enqueue_new_messages();

CREATE TRIGGER messages_translation_edit
    AFTER UPDATE ON messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION beseda_enqueue_edited_messages();
