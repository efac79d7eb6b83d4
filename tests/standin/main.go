// mongod-standin: a small MongoDB-wire-protocol server used ONLY by the molecule tests of the
// mongodb role, because no package registry reachable from the test machines carries mongod.
//
// It is started exactly like mongod (`mongod-standin --config /etc/mongod.conf`) and honours
// the settings of that file that the role's tests are about:
//
//	net.port, net.bindIp          every listed address is bound, nothing else
//	storage.dbPath                data and users are kept in <dbPath>/standin.json
//	systemLog.path                the log is appended there
//	security.authorization        "enabled" rejects every data command from an
//	                              unauthenticated connection (code 13, Unauthorized)
//
// Authentication is SCRAM-SHA-256 (the MongoDB default), with the localhost exception for the
// first user. Commands: hello/isMaster, ping, buildInfo, saslStart/saslContinue, createUser,
// updateUser, dropUser, usersInfo, listDatabases, insert, find (top-level equality filter,
// exclusion projection, sort, limit), update (replacement, upsert), createIndexes (accepted,
// not kept), delete, drop, endSessions, killCursors. It is a test double for the role's plumbing
// (user, directories, unit, limits, configuration), not a database.
package main

import (
	"bufio"
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xdg-go/scram"
	"go.mongodb.org/mongo-driver/v2/bson"
	"gopkg.in/yaml.v3"
)

const (
	opReply   = 1
	opQuery   = 2004
	opMsg     = 2013
	iterCount = 15000
	version   = "7.0.0"
)

type config struct {
	Net struct {
		Port   int    `yaml:"port"`
		BindIP string `yaml:"bindIp"`
	} `yaml:"net"`
	Storage struct {
		DBPath string `yaml:"dbPath"`
	} `yaml:"storage"`
	SystemLog struct {
		Path string `yaml:"path"`
	} `yaml:"systemLog"`
	Security struct {
		Authorization string `yaml:"authorization"`
	} `yaml:"security"`
}

type role struct {
	Role string `json:"role"`
	DB   string `json:"db"`
}

type user struct {
	User      string `json:"user"`
	DB        string `json:"db"`
	Salt      string `json:"salt"`
	StoredKey []byte `json:"storedKey"`
	ServerKey []byte `json:"serverKey"`
	Roles     []role `json:"roles"`
}

type state struct {
	Users map[string]*user                         `json:"users"` // key: db.user
	Data  map[string]map[string]*[]json.RawMessage `json:"data"`  // db -> collection -> extended JSON docs
}

type server struct {
	cfg    config
	auth   bool
	mu     sync.Mutex
	st     state
	file   string
	connID atomic.Int32
}

type conn struct {
	srv   *server
	c     net.Conn
	id    int32
	user  *user
	scram *scram.ServerConversation
	scDB  string
	local bool
}

func main() {
	cfgPath := flag.String("config", "/etc/mongod.conf", "mongod configuration file (YAML)")
	flag.StringVar(cfgPath, "f", "/etc/mongod.conf", "same as --config")
	flag.Parse()

	raw, err := os.ReadFile(*cfgPath)
	if err != nil {
		log.Fatalf("read config: %v", err)
	}
	s := &server{}
	if err := yaml.Unmarshal(raw, &s.cfg); err != nil {
		log.Fatalf("parse config %s: %v", *cfgPath, err)
	}
	if s.cfg.Net.Port == 0 {
		s.cfg.Net.Port = 27017
	}
	if s.cfg.Net.BindIP == "" {
		s.cfg.Net.BindIP = "127.0.0.1"
	}
	if s.cfg.Storage.DBPath == "" {
		log.Fatal("storage.dbPath is required")
	}
	if s.cfg.SystemLog.Path != "" {
		f, err := os.OpenFile(s.cfg.SystemLog.Path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
		if err != nil {
			log.Fatalf("open log: %v", err)
		}
		log.SetOutput(io.MultiWriter(os.Stderr, f))
	}
	s.auth = s.cfg.Security.Authorization == "enabled"
	s.file = filepath.Join(s.cfg.Storage.DBPath, "standin.json")
	s.st = state{Users: map[string]*user{}, Data: map[string]map[string]*[]json.RawMessage{}}
	if b, err := os.ReadFile(s.file); err == nil {
		if err := json.Unmarshal(b, &s.st); err != nil {
			log.Fatalf("read %s: %v", s.file, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		log.Fatalf("read %s: %v", s.file, err)
	}
	if err := s.save(); err != nil { // fails early when dbPath is not writable
		log.Fatalf("write %s: %v", s.file, err)
	}

	var wg sync.WaitGroup
	for _, addr := range strings.Split(s.cfg.Net.BindIP, ",") {
		addr = strings.TrimSpace(addr)
		ln, err := net.Listen("tcp", net.JoinHostPort(addr, fmt.Sprint(s.cfg.Net.Port)))
		if err != nil {
			log.Fatalf("listen: %v", err)
		}
		log.Printf("mongod-standin %s (uid %d) listening on %s, authorization %v", version, os.Getuid(), ln.Addr(), s.auth)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					log.Printf("accept: %v", err)
					return
				}
				go s.serve(c)
			}
		}()
	}
	wg.Wait()
}

func (s *server) save() error {
	b, err := json.Marshal(s.st)
	if err != nil {
		return err
	}
	tmp := s.file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.file)
}

func (s *server) serve(c net.Conn) {
	defer c.Close()
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	ip := net.ParseIP(host)
	cn := &conn{srv: s, c: c, id: s.connID.Add(1), local: ip != nil && ip.IsLoopback()}
	r := bufio.NewReader(c)
	for {
		var hdr [16]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		length := int(binary.LittleEndian.Uint32(hdr[0:]))
		reqID := binary.LittleEndian.Uint32(hdr[4:])
		opcode := binary.LittleEndian.Uint32(hdr[12:])
		if length < 16 || length > 48000000 {
			return
		}
		body := make([]byte, length-16)
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		var out []byte
		switch opcode {
		case opMsg:
			cmd, err := parseMsg(body)
			if err != nil {
				log.Printf("bad OP_MSG: %v", err)
				return
			}
			reply := cn.handle(cmd)
			doc, _ := bson.Marshal(reply)
			out = make([]byte, 0, 21+len(doc))
			out = append(out, make([]byte, 20)...)
			out = append(out, 0)
			out = append(out, doc...)
			binary.LittleEndian.PutUint32(out[12:], opMsg)
		case opQuery:
			cmd, err := parseQuery(body)
			if err != nil {
				log.Printf("bad OP_QUERY: %v", err)
				return
			}
			reply := cn.handle(cmd)
			doc, _ := bson.Marshal(reply)
			out = make([]byte, 36, 36+len(doc))
			binary.LittleEndian.PutUint32(out[12:], opReply)
			binary.LittleEndian.PutUint32(out[32:], 1) // numberReturned
			out = append(out, doc...)
		default:
			log.Printf("unsupported opcode %d", opcode)
			return
		}
		binary.LittleEndian.PutUint32(out[0:], uint32(len(out)))
		binary.LittleEndian.PutUint32(out[4:], uint32(cn.id))
		binary.LittleEndian.PutUint32(out[8:], reqID)
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

func cstring(b []byte) (string, []byte, error) {
	for i, ch := range b {
		if ch == 0 {
			return string(b[:i]), b[i+1:], nil
		}
	}
	return "", nil, errors.New("unterminated cstring")
}

func readDoc(b []byte) (bson.D, []byte, error) {
	if len(b) < 5 {
		return nil, nil, errors.New("short document")
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n > len(b) || n < 5 {
		return nil, nil, errors.New("bad document length")
	}
	var d bson.D
	if err := bson.Unmarshal(b[:n], &d); err != nil {
		return nil, nil, err
	}
	return d, b[n:], nil
}

// parseMsg returns the body document with kind-1 sequences folded in as arrays.
func parseMsg(b []byte) (bson.D, error) {
	flags := binary.LittleEndian.Uint32(b)
	b = b[4:]
	if flags&1 != 0 {
		b = b[:len(b)-4] // checksum
	}
	var body bson.D
	for len(b) > 0 {
		kind := b[0]
		b = b[1:]
		switch kind {
		case 0:
			d, rest, err := readDoc(b)
			if err != nil {
				return nil, err
			}
			body, b = d, rest
		case 1:
			size := int(binary.LittleEndian.Uint32(b))
			sec := b[4:size]
			b = b[size:]
			name, docs, err := cstring(sec)
			if err != nil {
				return nil, err
			}
			var arr bson.A
			for len(docs) > 0 {
				d, rest, err := readDoc(docs)
				if err != nil {
					return nil, err
				}
				arr = append(arr, d)
				docs = rest
			}
			body = append(body, bson.E{Key: name, Value: arr})
		default:
			return nil, fmt.Errorf("section kind %d", kind)
		}
	}
	return body, nil
}

func parseQuery(b []byte) (bson.D, error) {
	_, rest, err := cstring(b[4:])
	if err != nil {
		return nil, err
	}
	d, _, err := readDoc(rest[8:])
	if err != nil {
		return nil, err
	}
	// Legacy wrapping: {$query: {...}, $readPreference: ...}
	for _, e := range d {
		if e.Key == "$query" {
			if q, ok := e.Value.(bson.D); ok {
				return q, nil
			}
		}
	}
	return d, nil
}

func get(d bson.D, key string) (any, bool) {
	for _, e := range d {
		if e.Key == key {
			return e.Value, true
		}
	}
	return nil, false
}

func getString(d bson.D, key string) string {
	v, _ := get(d, key)
	s, _ := v.(string)
	return s
}

func fail(code int32, name, msg string) bson.D {
	return bson.D{{Key: "ok", Value: 0.0}, {Key: "errmsg", Value: msg}, {Key: "code", Value: code}, {Key: "codeName", Value: name}}
}

func ok(fields ...bson.E) bson.D {
	return append(bson.D(fields), bson.E{Key: "ok", Value: 1.0})
}

// Commands any connection may run, as with mongod.
var open = map[string]bool{
	"hello": true, "ismaster": true, "isMaster": true, "ping": true, "buildInfo": true,
	"buildinfo": true, "saslStart": true, "saslContinue": true, "endSessions": true,
	"logout": true, "getnonce": true,
}

func (cn *conn) handle(cmd bson.D) bson.D {
	if len(cmd) == 0 {
		return fail(59, "CommandNotFound", "empty command")
	}
	name := cmd[0].Key
	db := getString(cmd, "$db")
	if db == "" {
		db = "admin"
	}
	s := cn.srv
	if s.auth && !open[name] && cn.user == nil {
		if !(name == "createUser" && db == "admin" && cn.local && s.noUsers()) {
			return fail(13, "Unauthorized", fmt.Sprintf("command %s requires authentication", name))
		}
	}
	switch name {
	case "hello", "ismaster", "isMaster":
		r := bson.D{
			{Key: "helloOk", Value: true}, {Key: "ismaster", Value: true},
			{Key: "isWritablePrimary", Value: true}, {Key: "maxBsonObjectSize", Value: int32(16777216)},
			{Key: "maxMessageSizeBytes", Value: int32(48000000)}, {Key: "maxWriteBatchSize", Value: int32(100000)},
			{Key: "localTime", Value: bson.DateTime(time.Now().UnixMilli())},
			{Key: "logicalSessionTimeoutMinutes", Value: int32(30)}, {Key: "connectionId", Value: cn.id},
			{Key: "minWireVersion", Value: int32(0)}, {Key: "maxWireVersion", Value: int32(21)},
			{Key: "readOnly", Value: false},
		}
		if mechs := getString(cmd, "saslSupportedMechs"); mechs != "" && s.findUser(mechs) != nil {
			r = append(r, bson.E{Key: "saslSupportedMechs", Value: bson.A{"SCRAM-SHA-256"}})
		}
		return ok(r...)
	case "ping", "endSessions", "killCursors", "logout":
		return ok()
	case "buildInfo", "buildinfo":
		return ok(bson.E{Key: "version", Value: version},
			bson.E{Key: "versionArray", Value: bson.A{int32(7), int32(0), int32(0), int32(0)}},
			bson.E{Key: "gitVersion", Value: "mongod-standin"},
			bson.E{Key: "modules", Value: bson.A{"stackkit-standin"}})
	case "saslStart":
		if mech := getString(cmd, "mechanism"); mech != "SCRAM-SHA-256" {
			return fail(2, "BadValue", "Unsupported mechanism "+mech)
		}
		srv, _ := scram.SHA256.NewServer(func(name string) (scram.StoredCredentials, error) {
			u := s.findUser(db + "." + name)
			if u == nil {
				return scram.StoredCredentials{}, errors.New("unknown user")
			}
			return scram.StoredCredentials{KeyFactors: scram.KeyFactors{Salt: u.Salt, Iters: iterCount}, StoredKey: u.StoredKey, ServerKey: u.ServerKey}, nil
		})
		cn.scram, cn.scDB = srv.NewConversation(), db
		return cn.step(cmd)
	case "saslContinue":
		if cn.scram == nil {
			return fail(17, "ProtocolError", "no SASL session state found")
		}
		return cn.step(cmd)
	case "createUser", "updateUser":
		return cn.userCmd(name, db, cmd)
	case "dropUser":
		s.mu.Lock()
		defer s.mu.Unlock()
		key := db + "." + getString(cmd, "dropUser")
		if !cn.may("userAdmin", db) {
			return cn.denied(name, db)
		}
		if _, found := s.st.Users[key]; !found {
			return fail(11, "UserNotFound", "User '"+key+"' not found")
		}
		delete(s.st.Users, key)
		return cn.saved(ok())
	case "usersInfo":
		if !cn.may("userAdmin", db) {
			return cn.denied(name, db)
		}
		return s.usersInfo(db, cmd[0].Value)
	case "listDatabases":
		if !cn.may("read", "") {
			return cn.denied(name, db)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		var dbs bson.A
		for n := range s.st.Data {
			dbs = append(dbs, bson.D{{Key: "name", Value: n}, {Key: "sizeOnDisk", Value: int64(0)}, {Key: "empty", Value: false}})
		}
		return ok(bson.E{Key: "databases", Value: dbs}, bson.E{Key: "totalSize", Value: int64(0)})
	case "insert":
		if !cn.may("write", db) {
			return cn.denied(name, db)
		}
		docs, _ := get(cmd, "documents")
		arr, _ := docs.(bson.A)
		s.mu.Lock()
		defer s.mu.Unlock()
		coll := s.coll(db, getString(cmd, "insert"))
		for _, d := range arr {
			j, err := bson.MarshalExtJSON(d, true, false)
			if err != nil {
				return fail(2, "BadValue", err.Error())
			}
			*coll = append(*coll, j)
		}
		return cn.saved(ok(bson.E{Key: "n", Value: int32(len(arr))}))
	case "find":
		if !cn.may("read", db) {
			return cn.denied(name, db)
		}
		collName := getString(cmd, "find")
		f, _ := get(cmd, "filter")
		filter, _ := f.(bson.D)
		s.mu.Lock()
		defer s.mu.Unlock()
		var found []bson.D
		for _, j := range *s.coll(db, collName) {
			var d bson.D
			if err := bson.UnmarshalExtJSON(j, true, &d); err != nil {
				return fail(2, "BadValue", err.Error())
			}
			if matches(d, filter) {
				found = append(found, d)
			}
		}
		if sortSpec, ok := get(cmd, "sort"); ok {
			sortDocs(found, sortSpec.(bson.D))
		}
		if limit := getInt(cmd, "limit"); limit > 0 && len(found) > limit {
			found = found[:limit]
		}
		projection, _ := get(cmd, "projection")
		batch := bson.A{}
		for _, d := range found {
			batch = append(batch, project(d, projection))
		}
		return ok(bson.E{Key: "cursor", Value: bson.D{{Key: "firstBatch", Value: batch}, {Key: "id", Value: int64(0)}, {Key: "ns", Value: db + "." + collName}}})
	case "update":
		if !cn.may("write", db) {
			return cn.denied(name, db)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		coll := s.coll(db, getString(cmd, "update"))
		updates, _ := get(cmd, "updates")
		matched, modified := 0, 0
		var upserted bson.A
		for i, spec := range updates.(bson.A) {
			q, _ := get(spec.(bson.D), "q")
			u, _ := get(spec.(bson.D), "u")
			upsert, _ := get(spec.(bson.D), "upsert")
			n, id, err := replaceOne(coll, q.(bson.D), u.(bson.D), upsert == true)
			if err != nil {
				return fail(9, "FailedToParse", err.Error())
			}
			if id != nil {
				upserted = append(upserted, bson.D{{Key: "index", Value: int32(i)}, {Key: "_id", Value: id}})
			}
			matched += n
			modified += n
		}
		fields := []bson.E{{Key: "n", Value: int32(matched + len(upserted))}, {Key: "nModified", Value: int32(modified)}}
		if len(upserted) > 0 {
			fields = append(fields, bson.E{Key: "upserted", Value: upserted})
		}
		return cn.saved(ok(fields...))
	case "createIndexes":
		// Accepted and remembered by nobody: a stand-in scans every document anyway.
		if !cn.may("write", db) {
			return cn.denied(name, db)
		}
		return ok(bson.E{Key: "numIndexesBefore", Value: int32(1)}, bson.E{Key: "numIndexesAfter", Value: int32(2)}, bson.E{Key: "createdCollectionAutomatically", Value: false})
	case "delete":
		if !cn.may("write", db) {
			return cn.denied(name, db)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		coll := s.coll(db, getString(cmd, "delete"))
		dels, _ := get(cmd, "deletes")
		n := 0
		for _, spec := range dels.(bson.A) {
			q, _ := get(spec.(bson.D), "q")
			var kept []json.RawMessage
			for _, j := range *coll {
				var d bson.D
				_ = bson.UnmarshalExtJSON(j, true, &d)
				if matches(d, q.(bson.D)) {
					n++
				} else {
					kept = append(kept, j)
				}
			}
			*coll = kept
		}
		return cn.saved(ok(bson.E{Key: "n", Value: int32(n)}))
	case "drop":
		if !cn.may("write", db) {
			return cn.denied(name, db)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.st.Data[db] != nil {
			delete(s.st.Data[db], getString(cmd, "drop"))
		}
		return cn.saved(ok())
	}
	return fail(59, "CommandNotFound", fmt.Sprintf("no such command: '%s'", name))
}

func (cn *conn) saved(r bson.D) bson.D {
	if err := cn.srv.save(); err != nil {
		return fail(1, "InternalError", err.Error())
	}
	return r
}

func (cn *conn) denied(name, db string) bson.D {
	return fail(13, "Unauthorized", fmt.Sprintf("not authorized on %s to execute command { %s }", db, name))
}

// may reports whether the connection's user holds a role granting action on db ("" = any).
func (cn *conn) may(action, db string) bool {
	if !cn.srv.auth {
		return true
	}
	if cn.user == nil {
		return false
	}
	for _, r := range cn.user.Roles {
		switch r.Role {
		case "root":
			return true
		case "userAdminAnyDatabase":
			if action == "userAdmin" {
				return true
			}
		case "readWriteAnyDatabase":
			if action != "userAdmin" {
				return true
			}
		case "readAnyDatabase":
			if action == "read" {
				return true
			}
		case "dbOwner":
			if r.DB == db {
				return true
			}
		case "userAdmin":
			if action == "userAdmin" && r.DB == db {
				return true
			}
		case "readWrite":
			if action != "userAdmin" && r.DB == db {
				return true
			}
		case "read":
			if action == "read" && r.DB == db {
				return true
			}
		}
	}
	return false
}

func (cn *conn) step(cmd bson.D) bson.D {
	p, _ := get(cmd, "payload")
	var in []byte
	switch v := p.(type) {
	case bson.Binary:
		in = v.Data
	case string:
		in = []byte(v)
	}
	out, err := cn.scram.Step(string(in))
	if err != nil {
		log.Printf("authentication failed on %s: %v", cn.scDB, err)
		cn.scram = nil
		return fail(18, "AuthenticationFailed", "Authentication failed.")
	}
	done := cn.scram.Done()
	if done {
		if !cn.scram.Valid() {
			cn.scram = nil
			return fail(18, "AuthenticationFailed", "Authentication failed.")
		}
		cn.user = cn.srv.findUser(cn.scDB + "." + cn.scram.Username())
		log.Printf("authenticated %s on %s (connection %d)", cn.scram.Username(), cn.scDB, cn.id)
	}
	return ok(bson.E{Key: "conversationId", Value: int32(1)}, bson.E{Key: "done", Value: done},
		bson.E{Key: "payload", Value: bson.Binary{Data: []byte(out)}})
}

func (s *server) noUsers() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.st.Users) == 0
}

func (s *server) findUser(key string) *user {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Users[key]
}

func (s *server) coll(db, name string) *[]json.RawMessage {
	if s.st.Data[db] == nil {
		s.st.Data[db] = map[string]*[]json.RawMessage{}
	}
	if s.st.Data[db][name] == nil {
		s.st.Data[db][name] = &[]json.RawMessage{}
	}
	return s.st.Data[db][name]
}

func roleList(v any, db string) ([]role, error) {
	arr, _ := v.(bson.A)
	out := []role{}
	for _, item := range arr {
		switch r := item.(type) {
		case string:
			out = append(out, role{Role: r, DB: db})
		case bson.D:
			out = append(out, role{Role: getString(r, "role"), DB: getString(r, "db")})
		default:
			return nil, fmt.Errorf("bad role %v", item)
		}
	}
	return out, nil
}

func (cn *conn) userCmd(name, db string, cmd bson.D) bson.D {
	s := cn.srv
	localhostException := cn.user == nil && s.auth
	if !localhostException && !cn.may("userAdmin", db) {
		return cn.denied(name, db)
	}
	uname := getString(cmd, name)
	key := db + "." + uname
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.st.Users[key]
	if name == "createUser" && u != nil {
		return fail(51003, "Location51003", "User \""+key+"\" already exists")
	}
	if name == "updateUser" && u == nil {
		return fail(11, "UserNotFound", "User "+key+" not found")
	}
	if u == nil {
		u = &user{User: uname, DB: db}
	}
	if r, found := get(cmd, "roles"); found {
		roles, err := roleList(r, db)
		if err != nil {
			return fail(2, "BadValue", err.Error())
		}
		u.Roles = roles
	}
	if pwd := getString(cmd, "pwd"); pwd != "" {
		client, err := scram.SHA256.NewClient(uname, pwd, "")
		if err != nil {
			return fail(2, "BadValue", err.Error())
		}
		// The salt is kept as text: raw bytes would not survive the JSON data file.
		random := make([]byte, 21)
		_, _ = rand.Read(random)
		salt := base64.StdEncoding.EncodeToString(random)
		creds := client.GetStoredCredentials(scram.KeyFactors{Salt: salt, Iters: iterCount})
		u.Salt, u.StoredKey, u.ServerKey = creds.Salt, creds.StoredKey, creds.ServerKey
	} else if name == "createUser" {
		return fail(2, "BadValue", "Must provide a 'pwd' field for all user documents")
	}
	s.st.Users[key] = u
	if err := s.save(); err != nil {
		return fail(1, "InternalError", err.Error())
	}
	log.Printf("%s %s", name, key)
	return ok()
}

func (s *server) usersInfo(db string, arg any) bson.D {
	s.mu.Lock()
	defer s.mu.Unlock()
	var users bson.A
	for _, u := range s.st.Users {
		match := false
		switch a := arg.(type) {
		case string:
			match = u.DB == db && u.User == a
		case bson.D:
			match = u.DB == getString(a, "db") && u.User == getString(a, "user")
		default:
			match = u.DB == db
		}
		if !match {
			continue
		}
		var roles bson.A
		for _, r := range u.Roles {
			roles = append(roles, bson.D{{Key: "role", Value: r.Role}, {Key: "db", Value: r.DB}})
		}
		if roles == nil {
			roles = bson.A{}
		}
		sum := sha256.Sum256([]byte(u.DB + "." + u.User))
		users = append(users, bson.D{
			{Key: "_id", Value: u.DB + "." + u.User}, {Key: "userId", Value: base64.StdEncoding.EncodeToString(sum[:8])},
			{Key: "user", Value: u.User}, {Key: "db", Value: u.DB}, {Key: "roles", Value: roles},
			{Key: "mechanisms", Value: bson.A{"SCRAM-SHA-256"}},
		})
	}
	if users == nil {
		users = bson.A{}
	}
	return ok(bson.E{Key: "users", Value: users})
}

// matches: every top-level key of the filter equals the document's value.
func matches(d, filter bson.D) bool {
	for _, f := range filter {
		v, found := get(d, f.Key)
		if !found {
			return false
		}
		a, _ := bson.MarshalExtJSON(bson.D{{Key: "v", Value: v}}, true, false)
		b, _ := bson.MarshalExtJSON(bson.D{{Key: "v", Value: f.Value}}, true, false)
		if string(a) != string(b) {
			return false
		}
	}
	return true
}

func getInt(d bson.D, key string) int {
	switch v, _ := get(d, key); n := v.(type) {
	case int32:
		return int(n)
	case int64:
		return int(n)
	case float64:
		return int(n)
	}
	return 0
}

// replaceOne replaces the first document matching q by u (a replacement, not operators),
// keeping its _id; with upsert and no match it inserts u with the _id q names.
func replaceOne(coll *[]json.RawMessage, q, u bson.D, upsert bool) (int, any, error) {
	for _, e := range u {
		if strings.HasPrefix(e.Key, "$") {
			return 0, nil, fmt.Errorf("update operators are not supported: %s", e.Key)
		}
	}
	for i, j := range *coll {
		var d bson.D
		_ = bson.UnmarshalExtJSON(j, true, &d)
		if matches(d, q) {
			id, _ := get(d, "_id")
			out, err := bson.MarshalExtJSON(withID(u, id), true, false)
			if err != nil {
				return 0, nil, err
			}
			(*coll)[i] = out
			return 1, nil, nil
		}
	}
	if !upsert {
		return 0, nil, nil
	}
	id, found := get(q, "_id")
	if !found {
		id, found = get(u, "_id")
	}
	if !found {
		return 0, nil, errors.New("an upsert needs an _id in its filter or document")
	}
	out, err := bson.MarshalExtJSON(withID(u, id), true, false)
	if err != nil {
		return 0, nil, err
	}
	*coll = append(*coll, out)
	return 0, id, nil
}

func withID(d bson.D, id any) bson.D {
	out := bson.D{{Key: "_id", Value: id}}
	for _, e := range d {
		if e.Key != "_id" {
			out = append(out, e)
		}
	}
	return out
}

// project applies an exclusion projection such as {_id: 0}.
func project(d bson.D, projection any) bson.D {
	spec, _ := projection.(bson.D)
	if len(spec) == 0 {
		return d
	}
	var out bson.D
	for _, e := range d {
		if v, found := get(spec, e.Key); found && getInt(bson.D{{Key: "v", Value: v}}, "v") == 0 && v != true {
			continue
		}
		out = append(out, e)
	}
	return out
}

// sortDocs orders documents by the keys of spec (1 ascending, -1 descending).
func sortDocs(docs []bson.D, spec bson.D) {
	sort.SliceStable(docs, func(i, j int) bool {
		for _, key := range spec {
			a, _ := get(docs[i], key.Key)
			b, _ := get(docs[j], key.Key)
			c := compare(a, b)
			if c == 0 {
				continue
			}
			if getInt(bson.D{key}, key.Key) < 0 {
				return c > 0
			}
			return c < 0
		}
		return false
	})
}

func compare(a, b any) int {
	switch x := a.(type) {
	case bson.DateTime:
		return compareTo(x, b)
	case string:
		return compareTo(x, b)
	case int32:
		return compareTo(x, b)
	case int64:
		return compareTo(x, b)
	case float64:
		return compareTo(x, b)
	}
	return 0
}

// compareTo orders a before b when b has a's type; values of other types are equal to it.
func compareTo[T cmp.Ordered](a T, b any) int {
	if y, ok := b.(T); ok {
		return cmp.Compare(a, y)
	}
	return 0
}
