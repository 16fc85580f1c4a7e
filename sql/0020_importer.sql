-- Twilio importer bookkeeping: one row per run, one row per conversation done.
-- A conversation row is written in the same transaction as its last messages, so
-- after a kill the next run skips exactly the conversations that are complete.

CREATE TABLE import_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    export_id    text        NOT NULL,
    source_dir   text        NOT NULL,
    status       text        NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    report       jsonb
);

CREATE TABLE import_conversations (
    export_id         text        NOT NULL,
    conversation_sid  text        NOT NULL,
    signature         text        NOT NULL,
    chat_id           bigint      NOT NULL REFERENCES chats (id),
    run_id            bigint      REFERENCES import_runs (id),
    stats             jsonb       NOT NULL,
    done_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (export_id, conversation_sid)
);
CREATE INDEX import_conversations_chat_idx ON import_conversations (chat_id);
