-- check: files out
-- Projection and filter with scalar functions, CSV in and out.
SET 'parallelism.default' = '2';

CREATE TABLE orders (
  id BIGINT,
  customer STRING,
  product STRING,
  quantity INT,
  price DOUBLE,
  total AS quantity * price
) WITH (
  'connector' = 'filesystem',
  'path' = '${DATA}/orders.csv',
  'format' = 'csv'
);

CREATE TABLE big_orders (
  id BIGINT,
  who STRING,
  what STRING,
  total DOUBLE,
  size STRING
) WITH (
  'connector' = 'filesystem',
  'path' = '${DIR}/out',
  'format' = 'csv'
);

INSERT INTO big_orders
SELECT id,
       UPPER(customer),
       CONCAT(SUBSTRING(product, 1, 3), '-', CAST(quantity AS STRING)),
       ROUND(total, 2),
       CASE WHEN quantity >= 5 THEN 'large' ELSE 'small' END
FROM orders
WHERE total > 2 AND customer <> 'erin';
