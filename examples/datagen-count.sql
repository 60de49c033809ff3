-- Generated rows counted per key, with checkpoints: the SQL form of datagen-count.yaml.
-- Run it with `weir run examples/datagen-count.sql` (on an embedded mini cluster).
SET 'parallelism.default' = '2';
SET 'execution.checkpointing.interval' = '1s';
SET 'state.backend.type' = 'rocksdb';

CREATE TABLE events (
  id BIGINT,
  `key` BIGINT
) WITH (
  'connector' = 'datagen',
  'rows-per-second' = '200000',
  'number-of-rows' = '1000000',
  'fields.id.kind' = 'sequence',
  'fields.id.start' = '0',
  'fields.id.end' = '999999',
  'fields.key.min' = '0',
  'fields.key.max' = '99999'
);

CREATE TABLE counts (
  `key` BIGINT,
  n BIGINT
) WITH ('connector' = 'blackhole');

INSERT INTO counts SELECT `key`, COUNT(*) FROM events GROUP BY `key`;
