-- jsonb as compact JSON: what get-chat sends is written by PostgreSQL and passed
-- through untouched, so its nested jsonb (metadata) must come out without the
-- space jsonb's text puts after `:` and `,`. Keys stay in jsonb's order, and
-- strings and numbers are written as jsonb writes them.
CREATE FUNCTION beseda_compact_json(j jsonb) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    -- Without a null anywhere (the word is not even inside a string),
    -- json_strip_nulls strips nothing and writes the text compactly.
    IF strpos(j::text, 'null') = 0 THEN
        RETURN json_strip_nulls(j::json)::text;
    END IF;
    CASE jsonb_typeof(j)
    WHEN 'object' THEN
        RETURN '{' || (SELECT string_agg(to_json(e.key)::text || ':' || beseda_compact_json(e.value),
                                         ',' ORDER BY e.n)
                         FROM jsonb_each(j) WITH ORDINALITY AS e(key, value, n)) || '}';
    WHEN 'array' THEN
        RETURN '[' || (SELECT string_agg(beseda_compact_json(e.value), ',' ORDER BY e.n)
                         FROM jsonb_array_elements(j) WITH ORDINALITY AS e(value, n)) || ']';
    ELSE
        RETURN j::text;
    END CASE;
END $$;
