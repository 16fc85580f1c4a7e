-- A message's attachments are read in id order (history, sync, a duplicate send's
-- answer). With the index on message_id alone the planner may walk the primary key
-- in id order and filter each row instead (it did, on a small table, in the
-- writer's plan that is then kept for the connection's life); with (message_id, id)
-- one index gives both the rows and their order.
CREATE INDEX message_attachments_message_order_idx ON message_attachments (message_id, id);
DROP INDEX IF EXISTS message_attachments_message_idx;

-- No query looks unclaimed uploads up by uploader; the partial index only drew the
-- claim's plan into walking every unclaimed upload.
DROP INDEX IF EXISTS message_attachments_uploader_idx;
