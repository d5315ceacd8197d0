-- Demo raw data: two days of events with the values that break naive CSV writers.
SET NAMES utf8mb4;
CREATE DATABASE IF NOT EXISTS demo_raw CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE TABLE IF NOT EXISTS demo_raw.events (
  id BIGINT PRIMARY KEY,
  customer VARCHAR(100) NULL,
  city VARCHAR(100) NULL,
  note TEXT NULL,
  amount DECIMAL(10,2) NULL,
  score DOUBLE NULL,
  created_at DATETIME NOT NULL,
  KEY (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
DELETE FROM demo_raw.events;
INSERT INTO demo_raw.events VALUES
 (1, 'Ana',        'Lisboa',    'first order',               12.50, 0.5,  '2024-03-01 08:00:00'),
 (2, 'Bob',        NULL,        '',                          NULL,  NULL, '2024-03-01 09:30:00'),
 (3, '',           ' Zürich ',  'said "hi", then left',      7.00,  1.25, '2024-03-01 10:00:00'),
 (4, 'Chloé',      'São Paulo', 'line one\nline two',        100.10, -3,  '2024-03-01 23:59:59'),
 (5, '李雷',        '北京',      'emoji 😀 ok',               0.01,  2,    '2024-03-02 00:00:00'),
 (6, 'O''Brien',   'Cork',      'a,b,c',                     99.99, 0,    '2024-03-02 12:00:00'),
 (7, 'Dana',       '',          NULL,                        5.00,  NULL, '2024-03-02 18:45:10'),
 (8, 'Eve',        'Paris',     'crlf\r\nend',               3.30,  7.5,  '2024-03-02 23:00:00');
