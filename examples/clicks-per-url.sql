-- An updating aggregate: clicks per URL, printed as Flink prints a changelog
-- (+I a new row, -U/+U an update). Keyed state lives in RocksDB.
SET 'parallelism.default' = '2';
SET 'state.backend.type' = 'rocksdb';

CREATE TABLE clicks (
  `user` STRING,
  url STRING,
  ms BIGINT
) WITH (
  'connector' = 'filesystem',
  'path' = 'examples/data/clicks.json',
  'format' = 'json'
);

CREATE TABLE per_url (
  url STRING,
  hits BIGINT,
  users BIGINT,
  avg_ms DOUBLE
) WITH ('connector' = 'print');

INSERT INTO per_url
SELECT url, COUNT(*), COUNT(DISTINCT `user`), AVG(ms) FROM clicks GROUP BY url;
