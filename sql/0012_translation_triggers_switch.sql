-- The translation triggers cost every message insert a transition table and a
-- PL/pgSQL call even when no node has a provider (about a sixth of the database
-- time of a send batch). They now stay disabled until a node with a provider
-- starts: it enables them and sets translation_settings.enabled in one transaction
-- (wsserver/translation/worker.py), so a message committed after that is queued.
DO $$
BEGIN
    IF NOT (SELECT enabled FROM translation_settings) THEN
        ALTER TABLE messages DISABLE TRIGGER messages_translation_insert;
        ALTER TABLE messages DISABLE TRIGGER messages_translation_edit;
    END IF;
END
$$;
