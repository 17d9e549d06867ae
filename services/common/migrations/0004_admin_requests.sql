-- Admin commands answered once per request id: a repeat with the same body gets the first
-- answer, another body is refused. Written in the same transaction as the command's effect.
CREATE TABLE IF NOT EXISTS admin_requests (
    command     text        NOT NULL,
    request_id  text        NOT NULL,
    body_sha256 text        NOT NULL,
    answer      jsonb       NOT NULL,
    ts          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (command, request_id)
);
