# Warden tier T4 (architect): Vault/OpenBao ACL policy, mirrors `secrets` of T4 in policies/tiers.toml.
# Written by `warden vault setup` as policy `warden-t4-architect` and attached to every T4 agent's
# AppRole role. Roles get `token_no_default_policy`, so this is all the token may do.
# `secret/` is the KV v2 mount; setup rewrites it when another mount is configured.
# Per-agent paths (`agents/<id>/*`) come from the agent's own policy `warden-agent-<id>`.

# Every Warden token may look itself up, renew itself (long runs) and revoke itself (run end).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/revoke-self" {
  capabilities = ["update"]
}

path "secret/data/t3/*" {
  capabilities = ["read"]
}

path "secret/data/t4/*" {
  capabilities = ["read"]
}
