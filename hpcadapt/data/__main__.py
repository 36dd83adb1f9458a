from hpcadapt.data.fetch import main

main()
