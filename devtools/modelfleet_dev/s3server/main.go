// modelfleet-s3: a local S3 server for tests. gofakes3 (MIT) serves the S3 API
// from memory; this wrapper adds what gofakes3 does not check: AWS Signature V4
// on every request (header form), as AWS S3, MinIO and R2 do. One key pair,
// given by environment (never by flag, so it does not show in ps):
//
//	MODELFLEET_S3_ACCESS_KEY, MODELFLEET_S3_SECRET_KEY
//
// Unsigned requests get 403 AccessDenied, except reads (GET, HEAD) of buckets
// named by -public. A wrong key id gets 403 InvalidAccessKeyId, a wrong secret
// 403 SignatureDoesNotMatch. Built by devtools/modelfleet_dev/binaries.py into
// the binary cache; prints "listening on http://ADDR" once it accepts.
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

type auth struct {
	accessKey, secretKey, region string
	public                       map[string]bool
	next                         http.Handler
}

type s3Error struct {
	XMLName xml.Name `xml:"Error"`
	Code    string   `xml:"Code"`
	Message string   `xml:"Message"`
}

func refuse(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	log.Printf("%s %s: %d %s", r.Method, r.URL.Path, status, code)
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_ = xml.NewEncoder(w).Encode(s3Error{Code: code, Message: msg})
	}
}

// awsEscape is SigV4's URI encoding: unreserved characters stay, all else %XX.
func awsEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if ('A' <= c && c <= 'Z') || ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') ||
			c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func unescape(s string) string {
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}

func canonicalQuery(raw string) string {
	var pairs []string
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		pairs = append(pairs, awsEscape(unescape(k))+"="+awsEscape(unescape(v)))
	}
	sort.Strings(pairs)
	return strings.Join(pairs, "&")
}

// xmlType gives gofakes3's XML answers S3's Content-Type: clients such as minio
// read an error body only when it is application/xml, and gofakes3 sets none, so
// Go's sniffing would say text/xml. Its errors (status 300 and up) are all XML.
type xmlType struct{ http.ResponseWriter }

func (w xmlType) WriteHeader(status int) {
	if status >= 300 && w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/xml")
	}
	w.ResponseWriter.WriteHeader(status)
}

// Write without WriteHeader first means 200 (once sent, setting the header does nothing).
func (w xmlType) Write(b []byte) (int, error) {
	if w.Header().Get("Content-Type") == "" && bytes.HasPrefix(b, []byte("<?xml")) {
		w.Header().Set("Content-Type", "application/xml")
	}
	return w.ResponseWriter.Write(b)
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

func (a *auth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	header := r.Header.Get("Authorization")
	if header == "" {
		bucket, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if a.public[bucket] && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			a.next.ServeHTTP(xmlType{w}, r)
			return
		}
		refuse(w, r, http.StatusForbidden, "AccessDenied", "Access Denied")
		return
	}
	algo, rest, _ := strings.Cut(header, " ")
	fields := map[string]string{}
	for _, f := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		fields[k] = v
	}
	scope := strings.Split(fields["Credential"], "/")
	if algo != "AWS4-HMAC-SHA256" || len(scope) != 5 || fields["SignedHeaders"] == "" {
		refuse(w, r, http.StatusBadRequest, "AuthorizationHeaderMalformed", "not AWS4-HMAC-SHA256")
		return
	}
	if scope[0] != a.accessKey {
		refuse(w, r, http.StatusForbidden, "InvalidAccessKeyId",
			"The AWS Access Key Id you provided does not exist in our records.")
		return
	}
	if scope[2] != a.region || scope[3] != "s3" || scope[4] != "aws4_request" {
		refuse(w, r, http.StatusBadRequest, "AuthorizationHeaderMalformed",
			fmt.Sprintf("the region in the credential scope must be %q", a.region))
		return
	}
	amzDate := r.Header.Get("X-Amz-Date")
	at, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil || !strings.HasPrefix(amzDate, scope[1]) {
		refuse(w, r, http.StatusForbidden, "AccessDenied", "X-Amz-Date missing or not the scope's date")
		return
	}
	if d := time.Since(at); d > 15*time.Minute || d < -15*time.Minute {
		refuse(w, r, http.StatusForbidden, "RequestTimeTooSkewed", "the request time is too far off")
		return
	}
	payload := r.Header.Get("X-Amz-Content-Sha256")
	if len(payload) == 64 {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			refuse(w, r, http.StatusBadRequest, "IncompleteBody", err.Error())
			return
		}
		sum := sha256.Sum256(body)
		if hex.EncodeToString(sum[:]) != payload {
			refuse(w, r, http.StatusBadRequest, "XAmzContentSHA256Mismatch", "payload hash mismatch")
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	} else if payload != "UNSIGNED-PAYLOAD" {
		refuse(w, r, http.StatusBadRequest, "InvalidRequest", "x-amz-content-sha256 must be a hash or UNSIGNED-PAYLOAD")
		return
	}
	signed := strings.Split(fields["SignedHeaders"], ";")
	var canonHeaders strings.Builder
	for _, name := range signed {
		value := r.Header.Values(name)
		if name == "host" {
			value = []string{r.Host}
		}
		joined := make([]string, len(value))
		for i, v := range value {
			joined[i] = strings.Join(strings.Fields(v), " ")
		}
		canonHeaders.WriteString(name + ":" + strings.Join(joined, ",") + "\n")
	}
	path, query, _ := strings.Cut(r.RequestURI, "?")
	canonical := strings.Join([]string{
		r.Method, path, canonicalQuery(query), canonHeaders.String(), fields["SignedHeaders"], payload,
	}, "\n")
	digest := sha256.Sum256([]byte(canonical))
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + strings.Join(scope[1:], "/") + "\n" +
		hex.EncodeToString(digest[:])
	key := []byte("AWS4" + a.secretKey)
	for _, part := range scope[1:] {
		key = hmacSHA256(key, part)
	}
	want := hex.EncodeToString(hmacSHA256(key, toSign))
	if !hmac.Equal([]byte(want), []byte(fields["Signature"])) {
		refuse(w, r, http.StatusForbidden, "SignatureDoesNotMatch",
			"The request signature we calculated does not match the signature you provided.")
		return
	}
	a.next.ServeHTTP(xmlType{w}, r)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (port 0: any free port)")
	region := flag.String("region", "us-east-1", "the region signatures must be scoped to")
	var buckets, public list
	flag.Var(&buckets, "bucket", "create this bucket at start (repeatable)")
	flag.Var(&public, "public", "a bucket anyone may read without signing (repeatable; created)")
	flag.Parse()
	a := &auth{
		accessKey: os.Getenv("MODELFLEET_S3_ACCESS_KEY"),
		secretKey: os.Getenv("MODELFLEET_S3_SECRET_KEY"),
		region:    *region,
		public:    map[string]bool{},
	}
	if a.accessKey == "" || a.secretKey == "" {
		log.Fatal("set MODELFLEET_S3_ACCESS_KEY and MODELFLEET_S3_SECRET_KEY")
	}
	backend := s3mem.New()
	for _, b := range append(append(list{}, buckets...), public...) {
		if err := backend.CreateBucket(b); err != nil && !gofakes3.IsAlreadyExists(err) {
			log.Fatalf("creating bucket %q: %v", b, err)
		}
	}
	for _, b := range public {
		a.public[b] = true
	}
	a.next = gofakes3.New(backend, gofakes3.WithLogger(gofakes3.DiscardLog())).Server()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on http://%s\n", ln.Addr())
	log.Fatal(http.Serve(ln, a))
}
