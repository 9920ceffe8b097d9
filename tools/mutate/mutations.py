"""The planted bugs `make mutate` applies, one at a time, to a scratch copy of the tree.

Each entry: name, file (relative to the repository), search (exact text, which must occur
exactly once in that file: a mutation whose text is gone is STALE and fails the run, so this
list stays in step with the code), replace, and tests (pytest arguments, relative to the
repository, that must fail with the bug in place; keep them few: each mutation runs them -x).

A mutation that SURVIVES its tests is a missing test: write the test, do not drop the mutation.
"""

B = "tests/e2e/test_balance.py::"
F = "tests/e2e/test_failover.py::"
P = "tests/e2e/test_upstream_pool.py::"
L = "tests/e2e/test_linger.py::"
S = "tests/e2e/test_selfmade.py::"
A = "tests/e2e/test_backend_admin.py::"

MUTATIONS = [
    # --- the audit's five (tests-4f81db5.md finding 1) ---
    dict(name="hash-ignores-key", file="proxy/balance.c",
         search="h = XXH3_64bits_withSeed(addr, strlen(addr), key);",
         replace="h = XXH3_64bits_withSeed(addr, strlen(addr), 0);",
         tests=[B + "test_hash_uri_sticks_and_moves_only_the_removed_backends_keys",
                B + "test_hash_client_sticks_and_moves_only_the_removed_backends_keys"]),
    dict(name="least-conn-ignores-in-flight", file="proxy/balance.c",
         search="uint64_t a = p->bs->inflight[id];",
         replace="uint64_t a = 0;",
         tests=[B + "test_least_conn_follows_in_flight_requests"]),
    dict(name="parking-ignored", file="proxy/balance.c",
         search="if (p->skip_parked && (",
         replace="if (0 && p->skip_parked && (",
         tests=[F + "test_parked_backend_is_skipped_for_backend_park_ms_then_tried_again",
                F + "test_unreachable_backend_costs_each_core_one_connect_timeout_at_most"]),
    dict(name="no-failover", file="proxy/exchange.c",
         search="if (c->x->attempts >= max_attempts) {",
         replace="if (c->x->attempts >= max_attempts || c->x->attempts >= 1) {",
         tests=[F + "test_failover_answers_every_request_and_marks_the_dead_backend_down"]),
    dict(name="peercred-check-removed", file="proxy/ctl.c",
         search="(cred.uid != 0 && cred.uid != geteuid())",
         replace="(0 && cred.uid != 0 && cred.uid != geteuid())",
         tests=["tests/e2e/test_peercred.py"]),

    # --- balancing ---
    dict(name="rr-weights-ignored", file="proxy/balance.c",
         search="cur[id] += wt;\n\t\ttotal += wt;",
         replace="cur[id] += 1;\n\t\ttotal += 1;",
         tests=[B + "test_weighted_round_robin_3_to_1"]),
    dict(name="hash-ignores-weights", file="proxy/balance.c",
         search="score = (double)wt / -log(u);",
         replace="score = 1.0 / -log(u);",
         tests=[B + "test_hash_uri_spreads_keys_by_weight"]),
    dict(name="least-conn-ignores-weights", file="proxy/balance.c",
         search="uint64_t wt = usable_weight(p, id);",
         replace="uint64_t wt = usable_weight(p, id) ? 1 : 0;",
         tests=[B + "test_least_conn_weighs_in_flight_counts_by_weight"]),
    dict(name="weight-zero-still-usable", file="proxy/balance.c",
         search="if (wt == 0 || tried_has(p->tried, id) ||",
         replace="if (wt == 0)\n\t\twt = 1;\n\tif (tried_has(p->tried, id) ||",
         tests=[B + "test_weight_zero_from_the_start_gets_nothing",
                B + "test_weight_zero_drains_a_backend_by_reload",
                B + "test_weight_zero_gets_nothing_under_every_balance"]),
    dict(name="hash-client-keys-on-uri", file="proxy/client.c",
         search="c->x->hkey = XXH3_64bits(c->x->peer_ip, strlen(c->x->peer_ip));",
         replace="c->x->hkey = XXH3_64bits(base + req->target.off, req->target.len);",
         tests=[B + "test_hash_client_sticks_and_moves_only_the_removed_backends_keys"]),
    dict(name="in-flight-count-not-decremented", file="proxy/balance.h",
         search="\tbs->inflight[id]--;",
         replace="\t(void)0;",
         tests=[B + "test_least_conn_follows_in_flight_requests"]),

    dict(name="disabled-backend-still-usable", file="proxy/balance.c",
         search="|| !__atomic_load_n(&b->enabled, __ATOMIC_RELAXED))",
         replace="|| (0 && !__atomic_load_n(&b->enabled, __ATOMIC_RELAXED)))",
         tests=[A + "test_disable_and_enable_take_effect_on_traffic"]),
    dict(name="reload-re-enables-disabled", file="proxy/main.c",
         search="\t\t\t__atomic_store_n(&b->enabled, 1, __ATOMIC_RELAXED);\n"
                "\t\t\t__atomic_store_n(&b->down_until_ms, 0, __ATOMIC_RELAXED);\n\t\t} else {\n",
         replace="\t\t\t__atomic_store_n(&b->down_until_ms, 0, __ATOMIC_RELAXED);\n\t\t} else {\n"
                 "\t\t\t__atomic_store_n(&b->enabled, 1, __ATOMIC_RELAXED);\n",
         tests=[A + "test_a_disabled_backend_stays_disabled_across_a_reload"]),
    dict(name="reload-keeps-old-weights", file="proxy/main.c",
         search="\t\t__atomic_store_n(&b->weight, cfg->backends[i].weight, __ATOMIC_RELAXED);",
         replace="\t\tif (s->version == 1)\n"
                 "\t\t\t__atomic_store_n(&b->weight, cfg->backends[i].weight, __ATOMIC_RELAXED);",
         tests=[B + "test_weight_zero_drains_a_backend_by_reload",
                A + "test_backend_weight_zero_by_corralctl_and_reload_resets_it"]),

    # --- failover and passive health ---
    dict(name="tried-backends-not-skipped", file="proxy/balance.c",
         search="tried_has(p->tried, id) ||",
         replace="(0 && tried_has(p->tried, id)) ||",
         tests=[F + "test_hash_key_whose_backend_is_dead_fails_over_to_another"]),
    dict(name="all-parked-not-tried", file="proxy/balance.c",
         search="for (int pass = 0; pass < 2 && r < 0; pass++) {",
         replace="for (int pass = 0; pass < 1 && r < 0; pass++) {",
         tests=[F + "test_when_every_backend_is_parked_they_are_tried_anyway"]),
    dict(name="attempts-off-by-one", file="proxy/exchange.c",
         search="if (c->x->attempts >= max_attempts) {",
         replace="if (c->x->attempts > max_attempts) {",
         tests=[F + "test_attempts_max_one_means_no_failover",
                F + "test_attempts_never_exceed_the_number_of_backends"]),
    dict(name="park-time-ignored", file="proxy/main.c",
         search="park = D.snap->cfg.timeouts.backend_park_ms;",
         replace="park = D.snap->cfg.timeouts.backend_park_ms ? 150 : 0;",
         tests=[F + "test_parked_backend_is_skipped_for_backend_park_ms_then_tried_again"]),
    dict(name="park-zero-still-parks", file="proxy/main.c",
         search="if (last &&\n",
         replace="if (last && (park = park ? park : 1000) &&\n",
         tests=[F + "test_park_zero_turns_passive_health_off"]),
    dict(name="retries-not-counted", file="proxy/exchange.c",
         search="\tif (retry)\n\t\tSTAT_ADD(w->stats->upstream_retries, 1);\n",
         replace="",
         tests=[F + "test_failover_answers_every_request_and_marks_the_dead_backend_down"]),
    dict(name="backend-up-metric-ignores-health", file="proxy/main.c",
         search="out->healthy = !__atomic_load_n(&b->down, __ATOMIC_RELAXED) &&\n\t\t       __atomic_load_n(&b->down_until_ms, __ATOMIC_RELAXED) <= now;",
         replace="out->healthy = 1;",
         tests=[F + "test_failover_answers_every_request_and_marks_the_dead_backend_down"]),
    dict(name="connect-timeout-not-counted", file="proxy/client.c",
         search="\tcase T_CONNECT:\n\tcase T_UPSTREAM:\n\t\tSTAT_ADD(w->stats->timeouts, 1);",
         replace="\tcase T_CONNECT:\n\tcase T_UPSTREAM:",
         tests=[F + "test_unreachable_backend_costs_each_core_one_connect_timeout_at_most"]),

    # --- upstream pool ---
    dict(name="idle-expiry-never-runs", file="proxy/worker.c",
         search="\tups_pool_expire(w);\n",
         replace="\t(void)ups_pool_expire;\n",
         tests=[P + "test_pooled_connection_is_reused_then_closed_after_upstream_idle_ms"]),
    dict(name="idle-expiry-ignores-idle-time", file="proxy/upstream.c",
         search="if (u->idle_since_ms + idle_ms > w->now_ms &&",
         replace="if (u->idle_since_ms + idle_ms > w->now_ms + idle_ms &&",
         tests=[P + "test_idle_connection_survives_shorter_than_upstream_idle_ms"]),
    dict(name="idle-per-backend-off-by-one", file="proxy/upstream.c",
         search="w->pool_n[b] >= w->snap->cfg.limits.upstream_idle_per_backend",
         replace="w->pool_n[b] > w->snap->cfg.limits.upstream_idle_per_backend",
         tests=[P + "test_upstream_idle_per_backend_zero_turns_keep_alive_off",
                P + "test_upstream_idle_per_backend_bounds_the_pool"]),

    dict(name="pool-retry-counted-as-attempt", file="proxy/exchange.c",
         search="\t\tc->x->attempts--;\n\t\ttried_del",
         replace="\t\ttried_del",
         tests=[P + "test_idempotent_request_on_a_pooled_connection_the_backend_closed_is_retried_uncounted"]),
    dict(name="pool-retry-for-any-method", file="proxy/exchange.c",
         search="return u && u->reused && conn_has(c, CF_REQ_IDEMPOTENT) && c->req_state == RQ_DONE &&",
         replace="return u && u->reused && c->req_state == RQ_DONE &&",
         tests=[P + "test_idempotent_request_on_a_pooled_connection_the_backend_closed_is_retried_uncounted"]),

    # --- timers ---
    dict(name="body-timer-not-rearmed-on-progress", file="proxy/client.c",
         search="if ((cls == T_HEADER || cls == T_LINGER || cls == T_CONNECT) && c->t.tclass == cls)",
         replace="if ((cls == T_HEADER || cls == T_LINGER || cls == T_CONNECT || cls == T_BODY) &&\n\t    c->t.tclass == cls)",
         tests=["tests/e2e/test_upstream_timeouts.py::test_an_upload_that_keeps_coming_is_not_cut_by_client_body_ms"]),
    dict(name="upstream-timeout-never-fires", file="proxy/client.c",
         search="\t\t\tcls = T_UPSTREAM;\n\t\t\tms = t->upstream_response_ms;",
         replace="\t\t\tcls = T_UPSTREAM;\n\t\t\tms = t->upstream_response_ms * 1000;",
         tests=["tests/e2e/test_upstream_timeouts.py::test_a_body_that_stalls_longer_than_upstream_response_ms_is_cut",
                S + "test_504_from_a_silent_backend_is_logged_with_its_upstream_and_counted"]),

    # --- lingering close ---
    dict(name="linger-timer-never-armed", file="proxy/client.c",
         search="\tcase CP_LINGER:\n\t\tcls = T_LINGER;\n\t\tms = t->linger_ms;\n\t\tbreak;",
         replace="\tcase CP_LINGER:\n\t\treturn;",
         tests=[L + "test_linger_ms_bounds_a_lingering_close_of_a_client_that_keeps_sending"]),
    dict(name="linger-bytes-unbounded", file="proxy/client.c",
         search="c->linger_bytes + (uint32_t)res < w->snap->cfg.limits.linger_bytes_max",
         replace="c->linger_bytes + (uint32_t)res < UINT32_MAX",
         tests=[L + "test_linger_bytes_max_bounds_what_a_lingering_close_reads"]),

    # --- responses corral makes itself, and their counters ---
    dict(name="log-upstream-wrong-backend", file="proxy/client.c",
         search="\t\t\te.upstream = w->d->backends[x->backend].addr;",
         replace="\t\t\te.upstream = w->d->backends[0].addr;",
         tests=[S + "test_access_log_names_the_backend_that_answered"]),
    dict(name="parse-errors-not-counted", file="proxy/client.c",
         search="\tif (r < 0) {\n\t\tSTAT_ADD(w->stats->parse_errors, 1);",
         replace="\tif (r < 0) {",
         tests=[S + "test_400_is_logged_without_upstream_and_counted_as_a_parse_error"]),
    dict(name="rejected-conn-not-counted", file="proxy/client.c",
         search="\tSTAT_ADD(w->stats->conns_rejected, 1);\n\tclose(fd);",
         replace="\tclose(fd);",
         tests=[S + "test_full_connection_table_rejects_with_503_and_counts_it"]),
    dict(name="header-timeout-not-counted", file="proxy/client.c",
         search="\t\tpartial = conn_head_partial(c);\n\t\tSTAT_ADD(w->stats->timeouts, 1);",
         replace="\t\tpartial = conn_head_partial(c);",
         tests=[S + "test_408_on_a_slow_head_counts_a_timeout"]),
]
