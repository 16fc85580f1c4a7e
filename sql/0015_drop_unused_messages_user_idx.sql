-- No query reads messages by author and time: the (user_id, created_at) index only
-- cost every send and every imported message a btree insert.
DROP INDEX IF EXISTS messages_user_idx;
