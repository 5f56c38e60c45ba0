package main

import (
	"path/filepath"
	"slices"
	"testing"
)

// kubeExample is the directory of the Kubernetes example for Azure.
const kubeExample = "../../examples/kubernetes/azure"

// kubeObject is the part of a Kubernetes object the example's test reads.
type kubeObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	StringData map[string]string `yaml:"stringData"` // Secret
	Spec       struct {
		Replicas int             `yaml:"replicas"` // Deployment
		Selector map[string]any  `yaml:"selector"` // Service; a Deployment's holds matchLabels
		Ports    []kubePort      `yaml:"ports"`    // Service
		Template kubePodTemplate `yaml:"template"` // Deployment
	} `yaml:"spec"`
}

type kubePort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
	Port          int    `yaml:"port"`
	TargetPort    string `yaml:"targetPort"`
}

type kubePodTemplate struct {
	Metadata struct {
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec struct {
		TerminationGracePeriodSeconds int             `yaml:"terminationGracePeriodSeconds"`
		Containers                    []kubeContainer `yaml:"containers"`
	} `yaml:"spec"`
}

type kubeContainer struct {
	Name  string     `yaml:"name"`
	Ports []kubePort `yaml:"ports"`
	Env   []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom struct {
			SecretKeyRef struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	ReadinessProbe struct {
		HTTPGet struct {
			Path string `yaml:"path"`
			Port string `yaml:"port"`
		} `yaml:"httpGet"`
	} `yaml:"readinessProbe"`
}

// TestKubernetesExample decodes the example's YAML and checks that it
// hangs together: every object named, the Deployment's replicas share one
// container through environment variables that serve reads, the key comes
// from a Secret that secret.yaml describes, readiness is on /healthz, and
// the Service selects the pods and their port.
func TestKubernetesExample(t *testing.T) {
	t.Parallel()
	objects := map[string]kubeObject{}
	for _, file := range []string{"regproxy.yaml", "secret.yaml", "workload-identity.yaml"} {
		for _, o := range decodeAll[kubeObject](t, filepath.Join(kubeExample, file), false) {
			if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
				t.Errorf("%s: an object without apiVersion, kind or name: %+v", file, o)
			}
			objects[o.Kind+"/"+o.Metadata.Name] = o
		}
	}
	dep, ok := objects["Deployment/regproxy"]
	if !ok || len(dep.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("no Deployment regproxy with one container in regproxy.yaml")
	}
	if dep.Spec.Replicas < 2 {
		t.Errorf("Deployment: %d replicas, want several sharing the container", dep.Spec.Replicas)
	}
	if g := dep.Spec.Template.Spec.TerminationGracePeriodSeconds; g <= 30 {
		t.Errorf("terminationGracePeriodSeconds %d, want more than the 30s --shutdown-grace", g)
	}
	c := dep.Spec.Template.Spec.Containers[0]
	known := serveEnvVars()
	env := map[string]string{}
	for _, e := range c.Env {
		if !known[e.Name] {
			t.Errorf("env %s is no variable of regproxy serve", e.Name)
		}
		env[e.Name] = e.Value
		if ref := e.ValueFrom.SecretKeyRef; ref.Name != "" {
			if _, ok := objects["Secret/"+ref.Name].StringData[ref.Key]; !ok {
				t.Errorf("env %s: secret.yaml has no Secret %s with key %s", e.Name, ref.Name, ref.Key)
			}
		}
	}
	if env["REGPROXY_STORAGE"] != "azure" || env["REGPROXY_AZURE_ACCOUNT_NAME"] == "" {
		t.Errorf("env: storage %q, account %q; want azure and an account", env["REGPROXY_STORAGE"], env["REGPROXY_AZURE_ACCOUNT_NAME"])
	}
	if env["REGPROXY_AZURE_ACCOUNT_KEY"] != "" {
		t.Error("the account key is a literal value, not a Secret's")
	}
	if p := c.ReadinessProbe.HTTPGet; p.Path != "/healthz" || !slices.ContainsFunc(c.Ports, func(q kubePort) bool { return q.Name == p.Port }) {
		t.Errorf("readiness probe GET %s on port %q, want /healthz on a container port", p.Path, p.Port)
	}
	svc, ok := objects["Service/regproxy"]
	if !ok {
		t.Fatal("no Service regproxy in regproxy.yaml")
	}
	for k, v := range svc.Spec.Selector {
		if label, ok := v.(string); !ok || dep.Spec.Template.Metadata.Labels[k] != label {
			t.Errorf("Service selects %s=%s, which the pods do not carry", k, v)
		}
	}
	for _, p := range svc.Spec.Ports {
		if !slices.ContainsFunc(c.Ports, func(q kubePort) bool { return q.Name == p.TargetPort && q.ContainerPort == 3128 }) {
			t.Errorf("Service port %d targets %q, not the container's proxy port", p.Port, p.TargetPort)
		}
	}
	if _, ok := objects["ServiceAccount/regproxy"]; !ok {
		t.Error("workload-identity.yaml has no ServiceAccount regproxy")
	}
	patch := decodeAll[kubeObject](t, filepath.Join(kubeExample, "workload-identity-patch.yaml"), false)
	if len(patch) != 1 || len(patch[0].Spec.Template.Spec.Containers) != 1 ||
		patch[0].Spec.Template.Spec.Containers[0].Name != c.Name {
		t.Errorf("workload-identity-patch.yaml does not patch the container %q", c.Name)
	}
}

// serveEnvVars are the environment variables regproxy serve reads.
func serveEnvVars() map[string]bool {
	vars := map[string]bool{}
	for _, f := range serveFlags() {
		if sf, ok := f.(interface{ GetEnvVars() []string }); ok {
			for _, v := range sf.GetEnvVars() {
				vars[v] = true
			}
		}
	}
	return vars
}
