/* Test helper: self-signed P-256 certificates written into a temporary folder (OpenSSL API). */
#ifndef CORRAL_TEST_TLS_CERTS_H
#define CORRAL_TEST_TLS_CERTS_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/*
 * Writes dir/name.pem and dir/name.key: a certificate for cn with the given subjectAltName
 * ("DNS:a.test,DNS:*.b.test", or NULL for none), valid from now + from_s to now + to_s.
 * Returns 0 or -1.
 */
static int cert_make(const char *dir, const char *name, const char *cn, const char *san,
		     long from_s, long to_s)
{
	char path[512];
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	FILE *f;
	int r = -1;

	if (!key || !x)
		goto out;
	ASN1_INTEGER_set(X509_get_serialNumber(x), (long)random());
	X509_gmtime_adj(X509_getm_notBefore(x), from_s);
	X509_gmtime_adj(X509_getm_notAfter(x), to_s);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509_set_pubkey(x, key);
	if (san) {
		X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
		ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
		if (!ext)
			goto out;
		X509_add_ext(x, ext, -1);
		X509_EXTENSION_free(ext);
	}
	if (!X509_sign(x, key, EVP_sha256()))
		goto out;
	snprintf(path, sizeof(path), "%s/%s.pem", dir, name);
	f = fopen(path, "w");
	if (!f || !PEM_write_X509(f, x))
		goto out_f;
	fclose(f);
	snprintf(path, sizeof(path), "%s/%s.key", dir, name);
	f = fopen(path, "w");
	if (!f || !PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL))
		goto out_f;
	r = 0;
out_f:
	if (f)
		fclose(f);
out:
	X509_free(x);
	EVP_PKEY_free(key);
	return r;
}

static char cert_dir_path[64];

/* A fresh temporary folder for one test's files; cert_dir_remove() takes it away. */
static char *cert_dir(void)
{
	snprintf(cert_dir_path, sizeof(cert_dir_path), "/tmp/corral-tls-XXXXXX");
	return mkdtemp(cert_dir_path);
}

static int cert_rm(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	return remove(path);
}

static void cert_dir_remove(void)
{
	if (cert_dir_path[0])
		nftw(cert_dir_path, cert_rm, 8, FTW_DEPTH | FTW_PHYS);
}

#endif
