-- Queues $1 running missions of 3 steps (analyze, draft, notify), the rows an
-- auto-approved submit leaves behind. Seeding is setup, not measured.
WITH p AS (
  INSERT INTO proposals (id, source, agent, title, status, steps, parallel, metadata,
                         policy_version, decided_by, decided_at, created_at, updated_at)
  SELECT gen_random_uuid(), 'api', 'opsloop-bench', 'bench mission ' || g, 'approved',
         '[{"kind": "analyze", "payload": {"text": "bench"}}, {"kind": "draft", "payload": {"text": "bench"}}, {"kind": "notify", "payload": {"text": "bench"}}]',
         false, '{}', 1, 'auto_approve', now(), now(), now()
  FROM generate_series(1, $1::bigint) g
  RETURNING id, title, created_at
), m AS (
  INSERT INTO missions (id, proposal_id, title, status, parallel, created_at, updated_at)
  SELECT gen_random_uuid(), p.id, p.title, 'running', false, p.created_at, p.created_at FROM p
  RETURNING id, created_at
)
INSERT INTO mission_steps (id, mission_id, seq, kind, payload, status, attempt, max_attempts,
                           created_at, updated_at)
SELECT gen_random_uuid(), m.id, s.seq, s.kind, '{"text": "bench"}', 'queued', 0, 3,
       m.created_at, m.created_at
FROM m CROSS JOIN (VALUES (0, 'analyze'), (1, 'draft'), (2, 'notify')) AS s(seq, kind)
