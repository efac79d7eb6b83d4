module stackkit.local/mongod-standin

go 1.25.0

require (
	github.com/xdg-go/scram v1.4.0
	go.mongodb.org/mongo-driver/v2 v2.10.0
	gopkg.in/yaml.v3 v3.0.1
)

require (
	github.com/xdg-go/stringprep v1.0.4 // indirect
	golang.org/x/text v0.41.0 // indirect
)
