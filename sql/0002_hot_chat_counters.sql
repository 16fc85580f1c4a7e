-- Every stored batch moves its chats' counters (last_seq, rev, last_message_*,
-- updated_at). With no index on those columns and room on the page, PostgreSQL
-- updates the row in place (a HOT update) without touching any of the chats'
-- indexes, the trigram ones included. Lists sort a user's chats in memory, so the
-- activity index bought nothing on the hot path and cost an index write per batch.
DROP INDEX IF EXISTS chats_activity_idx;
ALTER TABLE chats SET (fillfactor = 70);
