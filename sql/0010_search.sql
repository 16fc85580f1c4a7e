-- Search that works the same in Russian, English and Chinese, whatever the
-- database's locale: text is lowercased with the builtin pg_c_utf8 collation
-- (Unicode case mapping, stable across OS upgrades) and cut into grams:
--   * every trigram of the text that holds no whitespace (any script);
--   * every unigram and bigram inside a run of Han characters, so one- and
--     two-character Chinese queries are indexed too (pg_trgm cannot: it needs three
--     characters and, under a C locale, ignores non-ASCII letters altogether).
-- A query term becomes the same grams; GIN finds rows whose grams contain them all
-- (`@>`) and a LIKE on the normalised text rechecks the exact substring.
-- Needs PostgreSQL 17+ for pg_c_utf8 (docs/rest.md, docs/limits.md).

CREATE FUNCTION beseda_norm(t text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN lower(t COLLATE pg_c_utf8);

-- Han ideographs (CJK Unified, Extension A, Compatibility) are searched by one or
-- two characters too: beseda_grams adds their unigrams and bigrams.
-- COST: about 30 us per short message, a thousand simple operators; priced so the
-- planner prefers the index over computing grams row by row.
CREATE FUNCTION beseda_grams(t text) RETURNS text[]
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE COST 1000
AS $$
DECLARE
    -- Only the first 4,000 characters are indexed (docs/limits.md).
    -- Same as beseda_norm, written out: maintenance commands (CREATE INDEX, ANALYZE,
    -- autovacuum) run with search_path = pg_catalog, where beseda_norm is not found.
    a text[] := regexp_split_to_array(
        regexp_replace(lower(left(t, 4000) COLLATE pg_c_utf8), '\s+', ' ', 'g'), '');
    n int := cardinality(a);
    o text[] := '{}';
    i int;
    c int;
    han boolean;
    prev_han boolean := false;
BEGIN
    FOR i IN 1..n LOOP
        IF i <= n - 2 AND a[i] <> ' ' AND a[i + 1] <> ' ' AND a[i + 2] <> ' ' THEN
            o := o || (a[i] || a[i + 1] || a[i + 2]);
        END IF;
        c := ascii(a[i]);
        han := c >= 13312 AND (c <= 19903 OR (c >= 19968 AND c <= 40959)
                               OR (c >= 63744 AND c <= 64255));
        IF han THEN
            o := o || a[i];
            IF prev_han THEN
                o := o || (a[i - 1] || a[i]);
            END IF;
        END IF;
        prev_han := han;
    END LOOP;
    RETURN o;
END
$$;

-- The searchable text of a message: the original and its translations.
CREATE FUNCTION beseda_message_text(content jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN concat_ws(E'\n', content ->> 'ru', content ->> 'en', content ->> 'zh');

CREATE INDEX chats_name_grams ON chats USING gin (beseda_grams(name));
CREATE INDEX users_name_grams ON users USING gin (beseda_grams(name));
CREATE INDEX messages_text_grams ON messages
    USING gin (beseda_grams(beseda_message_text(content)))
    WHERE deleted_at IS NULL;

-- The latest visible message of a chat, for list previews, skipping deleted ones.
CREATE INDEX messages_chat_live_seq_idx ON messages (chat_id, seq DESC)
    WHERE deleted_at IS NULL;
