/* Configuration: load and validate corral.yaml (libyaml). */
#ifndef CORRAL_CONFIG_H
#define CORRAL_CONFIG_H

#include <stddef.h>
#include "config-t.h"

/* Fills *cfg with every default (no listen address, no backend, all cores). */
void config_defaults(struct config *cfg);

/*
 * Parses the YAML file at path into *cfg (defaults first, then the file).
 * Returns 0, or a negative errno with a one-line message in err (at most errlen bytes)
 * that names the file, the line and the bad key, e.g.
 *   "corral.yaml:7: limits.header_bytes_max: must be an integer between 1024 and 1048576".
 * Unknown keys are errors (a typo must not silently fall back to a default).
 */
int config_load(struct config *cfg, const char *path, char *err, size_t errlen);

/* The same from a string in memory (name is used in messages). For tests. */
int config_parse(struct config *cfg, const char *name, const char *text, size_t len, char *err,
		 size_t errlen);

/* Parses "1.2.3.4:80", "[::1]:80", "localhost:80" (numeric only is fine) into *a. 0 or -EINVAL. */
int config_parse_addr(struct cfg_addr *a, const char *text);

const char *config_balance_name(enum cfg_balance b);

/*
 * The checks the config file and the control commands share, so that the runtime accepts
 * exactly what the file does, with the file's words: 0, or -EINVAL with "KEY: reason" in
 * err, e.g. "steering.weights[1]: must be an integer between 0 and 1000",
 * "steering.weights: at least one weight must be above 0",
 * "backends: every backend has weight 0, so no request could be served".
 */
int config_check_weight(const char *key, uint64_t w, char *err, size_t errlen);
int config_check_core_weights(const uint32_t *w, uint32_t n, char *err, size_t errlen);
int config_check_backend_weights(const uint32_t *w, uint32_t n, char *err, size_t errlen);
/* Index of the first listen entry with tls:, or -1 when every listener is plaintext. */
int config_tls_listener(const struct config *cfg);
/* Index of the first backend entry with tls:, or -1 when every backend is plaintext. */
int config_tls_backend(const struct config *cfg);

#endif
