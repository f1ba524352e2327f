package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	kind "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

type KindReport struct {
	Name         string        `json:"name"`
	Nodes        []KindNode    `json:"nodes"`
	PortMappings []PortMapping `json:"portMappings"`
}

type KindNode struct {
	Role  string `json:"role"`
	Image string `json:"image"`
}

type PortMapping struct {
	ContainerPort int32  `json:"containerPort"`
	HostPort      int32  `json:"hostPort"`
	ListenAddress string `json:"listenAddress"`
	Protocol      string `json:"protocol"`
}

// checkKindConfig parses the kind config into kind's own types, refusing unknown fields (kind
// itself decodes strictly too), and checks what kind would refuse at `kind create cluster`.
func (c *checker) checkKindConfig(file string) KindReport {
	var out KindReport
	raw, err := os.ReadFile(filepath.Join(c.root, file))
	if err != nil {
		c.problem("kind config: %v", err)
		return out
	}
	c.files[file] = true
	var cfg kind.Cluster
	if err := yaml.UnmarshalStrict(raw, &cfg); err != nil {
		c.problem("kind config %s does not parse as a kind.x-k8s.io/v1alpha4 Cluster: %v", file, err)
		return out
	}
	if cfg.Kind != "Cluster" || cfg.APIVersion != "kind.x-k8s.io/v1alpha4" {
		c.problem("kind config %s: kind %q, apiVersion %q (want Cluster, kind.x-k8s.io/v1alpha4)", file, cfg.Kind, cfg.APIVersion)
	}
	out.Name = cfg.Name
	if out.Name == "" {
		out.Name = "kind" // kind's default cluster name
	}
	controlPlanes := 0
	hostPorts := map[string]bool{}
	for i, node := range cfg.Nodes {
		switch node.Role {
		case kind.ControlPlaneRole:
			controlPlanes++
		case kind.WorkerRole:
		default:
			c.problem("kind config %s: node %d has role %q (control-plane or worker)", file, i, node.Role)
		}
		out.Nodes = append(out.Nodes, KindNode{Role: string(node.Role), Image: node.Image})
		for _, m := range node.ExtraPortMappings {
			if m.ContainerPort < 1 || m.ContainerPort > 65535 || m.HostPort < -1 || m.HostPort > 65535 {
				c.problem("kind config %s: port mapping %d->%d is out of range", file, m.HostPort, m.ContainerPort)
			}
			switch m.Protocol {
			case "", kind.PortMappingProtocolTCP, kind.PortMappingProtocolUDP, kind.PortMappingProtocolSCTP:
			default:
				c.problem("kind config %s: port mapping protocol %q (TCP, UDP or SCTP)", file, m.Protocol)
			}
			if m.ListenAddress != "" && net.ParseIP(m.ListenAddress) == nil {
				c.problem("kind config %s: listenAddress %q is not an IP address", file, m.ListenAddress)
			}
			key := fmt.Sprintf("%s/%s/%d", m.ListenAddress, m.Protocol, m.HostPort)
			if m.HostPort > 0 && hostPorts[key] {
				c.problem("kind config %s: host port %d is mapped twice", file, m.HostPort)
			}
			hostPorts[key] = true
			out.PortMappings = append(out.PortMappings, PortMapping{
				ContainerPort: m.ContainerPort, HostPort: m.HostPort,
				ListenAddress: m.ListenAddress, Protocol: string(m.Protocol),
			})
		}
	}
	if len(cfg.Nodes) > 0 && controlPlanes == 0 {
		c.problem("kind config %s: no control-plane node", file)
	}
	return out
}
