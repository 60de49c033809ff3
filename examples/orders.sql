-- Orders from a CSV file, filtered and reshaped with SQL functions, written exactly once into
-- transactional CSV files (committed at each checkpoint). Paths are relative to where weir runs.
SET 'execution.checkpointing.interval' = '2s';

CREATE TABLE orders (
  id BIGINT,
  customer STRING,
  product STRING,
  quantity INT,
  price DOUBLE,
  total AS quantity * price
) WITH (
  'connector' = 'filesystem',
  'path' = 'examples/data/orders.csv',
  'format' = 'csv'
);

CREATE TABLE big_orders (
  id BIGINT,
  customer STRING,
  total DOUBLE
) WITH (
  'connector' = 'filesystem',
  'path' = 'out/big_orders',
  'format' = 'json'
);

INSERT INTO big_orders
SELECT id, INITCAP(customer), ROUND(total, 2) FROM orders WHERE total >= 5;
