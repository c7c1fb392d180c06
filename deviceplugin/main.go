// Command fake-gpu-device-plugin advertises a few fake GPUs to the kubelet through the device
// plugin API (v1beta1), so that pods asking for nvidia.com/gpu schedule and run on nodes with no
// GPU: the kubelet's own allocation path is exercised the way it is on a real GPU node.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// plugin serves the DevicePlugin gRPC service for a fixed set of always-healthy devices.
type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices []*pluginapi.Device
	stop    chan struct{}
}

func newPlugin(count int) *plugin {
	devices := make([]*pluginapi.Device, count)
	for i := range devices {
		devices[i] = &pluginapi.Device{ID: fmt.Sprintf("fake-gpu-%d", i), Health: pluginapi.Healthy}
	}
	return &plugin{devices: devices, stop: make(chan struct{})}
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the device list once; fake devices never change health.
func (p *plugin) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	select {
	case <-p.stop:
	case <-stream.Context().Done():
	}
	return nil
}

// Allocate hands each container the ids it was given, the way NVIDIA's plugin does, so that a
// workload can see which "GPUs" it holds.
func (p *plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		log.Printf("allocating %v", c.DevicesIds)
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(c.DevicesIds, ",")},
		})
	}
	return resp, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// serve listens on socketPath and registers resourceName with the kubelet; it returns the server
// so that the caller can stop it when the kubelet restarts.
func serve(p *plugin, pluginDir, socketName, resourceName string) (*grpc.Server, error) {
	socketPath := filepath.Join(pluginDir, socketName)
	_ = os.Remove(socketPath)
	listener, err := net.Listen("unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socketPath, err)
	}
	server := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(server, p)
	go func() { _ = server.Serve(listener) }()

	conn, err := grpc.NewClient("unix://"+filepath.Join(pluginDir, "kubelet.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		server.Stop()
		return nil, fmt.Errorf("connect to the kubelet: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     socketName,
		ResourceName: resourceName,
		Options:      &pluginapi.DevicePluginOptions{},
	})
	if err != nil {
		server.Stop()
		return nil, fmt.Errorf("register %s with the kubelet: %w", resourceName, err)
	}
	return server, nil
}

func main() {
	resourceName := flag.String("resource", "nvidia.com/gpu", "extended resource name to advertise")
	count := flag.Int("devices", 4, "number of fake devices")
	pluginDir := flag.String("plugin-dir", pluginapi.DevicePluginPath, "the kubelet's device plugin directory")
	flag.Parse()
	if *count < 1 {
		log.Fatalf("-devices must be at least 1, got %d", *count)
	}
	socketName := "fake-gpu.sock"
	socketPath := filepath.Join(*pluginDir, socketName)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)

	var server *grpc.Server
	var p *plugin
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for {
		// A restarting kubelet deletes every socket in its plugin directory: when ours is gone,
		// serve again and re-register, as real device plugins do.
		if _, err := os.Stat(socketPath); server == nil || err != nil {
			if server != nil {
				log.Printf("socket %s is gone (kubelet restarted): registering again", socketPath)
				close(p.stop)
				server.Stop()
				server = nil
			}
			p = newPlugin(*count)
			s, err := serve(p, *pluginDir, socketName, *resourceName)
			if err != nil {
				log.Printf("%v; retrying", err)
			} else {
				server = s
				log.Printf("registered %d fake %s devices", *count, *resourceName)
			}
		}
		select {
		case <-signals:
			if server != nil {
				close(p.stop)
				server.Stop()
			}
			_ = os.Remove(socketPath)
			return
		case <-ticker.C:
		}
	}
}
