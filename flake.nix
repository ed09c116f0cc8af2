{
  description = "nixoci: reproducible, cache-friendly layered OCI images from Nix closures";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems =
        f:
        builtins.listToAttrs (
          map (system: {
            name = system;
            value = f system;
          }) systems
        );
    in
    {
      # `buildImage` (see nix/default.nix): needs nothing but builtins, so it evaluates without
      # nixpkgs. With nixpkgs at hand, pass `shell = pkgs.runtimeShell; path = [ pkgs.coreutils ];`
      # and `nixoci = nixoci.packages.${system}.nixoci;`.
      lib = import ./nix { };

      # nixoci itself. Not evaluated by the test suite (it has no nixpkgs offline): kept minimal.
      packages = forAllSystems (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
        in
        {
          nixoci = pkgs.rustPlatform.buildRustPackage {
            pname = "nixoci";
            version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
            src = pkgs.lib.cleanSource ./.;
            cargoLock.lockFile = ./Cargo.lock;
            # The test suite drives Nix, podman, skopeo and a registry: run it with scripts/test.
            doCheck = false;
            meta = {
              description = "Turn a Nix closure into a reproducible, cache-friendly OCI image";
              license = with pkgs.lib.licenses; [
                mit
                asl20
              ];
              mainProgram = "nixoci";
            };
          };
          default = self.packages.${system}.nixoci;
        }
      );
    };
}
